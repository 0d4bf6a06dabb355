"""``burrow autoscale``: replicas of node pools from the depth of the queues they serve.

``policy`` decides (pure), ``config`` reads the groups from a TOML file, ``run`` measures depths and applies
decisions through a provider: ``local`` (``burrow node`` processes on this machine) or ``salad`` (a SaladCloud
container group). Kubernetes users scale with KEDA instead: see ``kubernetes/`` beside this module.
"""
