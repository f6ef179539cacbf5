"""Flows as graphs: step signatures, the validated plan of a flow, and the pure decisions
(what a ready step becomes, what a run returns) that every backend's settle applies."""
