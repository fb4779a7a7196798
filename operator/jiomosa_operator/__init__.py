"""Jiomosa's Kubernetes operator: one Chrome pod per BrowserSession."""
