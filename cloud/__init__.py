"""Cloud side: submitting jobs, and (in later issues) topology, the router actor and the autoscaler."""
