-- Queue what the ingress list holds (the prelude, ingress.lua, does it). KEYS: seq.
return 0
