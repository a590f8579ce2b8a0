"""Fault-injection support: the ERP-side observer, an ack responder, the run report."""
