-- Queue what the ingress list holds (the prelude, common.lua, does it). KEYS: seq.
return 0
