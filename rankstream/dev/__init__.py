"""Developer tools, never imported by the runtime (producer, stream jobs, sinks).

- :mod:`rankstream.dev.stack`: the local single-node Kafka broker (jars from Maven Central, KRaft, 127.0.0.1);
- :mod:`rankstream.dev.synthetic`: deterministic synthetic training runs with injected faults;
- :mod:`rankstream.dev.demo`: ``rankstream demo``, the whole system on one machine.
"""
