"""Infrastructure below the domain: the Redis client, circuit breakers and error classification,
backoff, per-event-loop holders, the hot message buffer, the rate limiter and the bus (the channel
layer's sending side). Nothing here imports the models, services, selectors or anything above them:
the domain uses these pieces, never the other way round."""
