"""instructcraft train package."""
