"""The wire contract between cloud services and nodes: job options, the record, queue naming, the envelope.

``cloud/`` imports these modules; they import nothing from the rest of ``node/`` but ``node.errors``.
"""
