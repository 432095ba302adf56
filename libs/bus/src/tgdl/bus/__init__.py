"""NATS plumbing shared by the services: topology, the batch event log, download leases."""
