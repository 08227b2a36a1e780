"""Helpers shared by the test modules (daemons, event streams, a watching frontend, an
outsider's requests and the audit lines they leave, a fake clock, the RFCs' text, hostile JSON)."""
