"""instructcraft policies package."""
