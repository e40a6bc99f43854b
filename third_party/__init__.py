"""What others own: published numbers that experiments compare against, external name maps."""
