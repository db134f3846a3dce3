"""What an operator runs by hand against a deployment, beside `status`: `send` (a message written
as the platform's API writes it, then followed to READ) and `message ID` (all that is known about
one message). Read from the outside (PostgreSQL, Redis, Kafka, the workers' `/readyz`), so they
work against any deployment the settings point at."""
