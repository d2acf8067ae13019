"""Recommendation: from a table of user-item interactions to a model that ranks items for a
user, measured under an explicit protocol (ARCHITECTURE.md, "Recommendation")."""
