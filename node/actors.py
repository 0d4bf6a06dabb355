"""The node entry point: ``dramatiq node.actors --processes N --threads 1``.

Importing this module boots the worker process (slot, broker, middleware, storage) and then imports the actor
modules named by ``BURROW_ACTOR_MODULES`` (default ``actors.simulation``).  Only worker processes import it;
cloud services import the actor modules themselves with a broker of their own.
"""

from node.boot import boot

broker = boot()
