"""Scale-out on Ray Serve: `livecast serve --replicas N` runs N full livecast replicas behind one ingress.

config (ScaleConfig, the flags) · replica (the Serve deployment: one app process each) ·
registry (heartbeats: the live replica set) · routing (which replica serves a request) ·
ingress + bridge + pins + aggregate (the reverse proxy: HTTP, WebSocket, sticky ids, its own
/health and /metrics) · metrics (merged /metrics) · launcher (run_scaled, Cluster).
Importing the ingress side imports no Ray; replica.__init__, registry and launcher do.
"""
