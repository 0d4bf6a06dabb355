"""Burrow's node runtime: what runs on one (interruptible) GPU machine."""
