"""The twin encrypted at rest."""
