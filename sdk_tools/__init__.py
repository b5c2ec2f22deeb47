"""memwall SDK tools: reference models and data, analysis and planning, the host runner and the CLI."""
