"""instructcraft agent package."""
