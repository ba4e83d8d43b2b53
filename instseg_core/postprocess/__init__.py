"""Post-processing: turning network outputs into instances (clustering, assignment, masks)."""
