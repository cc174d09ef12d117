"""Tools a user runs: the command line, the demo, the embedded broker, replay, simulation, erasure requests and a
local Apache Kafka for tests and benches. They may import anything; nothing else imports them."""
