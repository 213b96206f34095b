"""Queue sources: RabbitMQ queues and Redis Streams drained in batches, acknowledged after the load commits.

Kept free of imports so that ``driftless.spec`` can import ``driftless.sources.queues.spec`` without a cycle; use
``from driftless.sources.queues.source import QueueSource``.
"""
