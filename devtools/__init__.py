"""Development tooling, apart from the runtime packages: the local Kafka broker and the worker
processes that tests, benchmarks and `make run` start (none of it runs inside a worker)."""
