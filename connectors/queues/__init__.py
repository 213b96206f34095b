"""Queue sources: RabbitMQ queues and Redis Streams drained in batches, acknowledged after the load commits.

Kept free of imports so that ``etl.spec`` can import ``connectors.queues.spec`` without a cycle; use
``from connectors.queues.source import QueueSource``.
"""
