-- Push a token on a wake-up list unless it holds one (Cluster: the client wakes consumers
-- after a call that made work appear). KEYS: the list.
wake(KEYS[1])
return 0
