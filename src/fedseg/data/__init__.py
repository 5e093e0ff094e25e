"""Medical data: reading, validating, splitting, preprocessing and caching one site's cases."""
