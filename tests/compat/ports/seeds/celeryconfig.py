# Seed 003's load-balancing configuration object (old uppercase names), ported as is.
class Config(object):
    CELERYD_PREFETCH_MULTIPLIER = 4
    CELERYD_MAX_TASKS_PER_CHILD = 1000
