"""Part B claims: what attention can and cannot represent (Sanford, Hsu, Telgarsky 2023)."""
