"""Interactive evaluation: metrics, click simulators, dataset layouts, protocols, reports."""
