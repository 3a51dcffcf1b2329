"""sed-ray."""
