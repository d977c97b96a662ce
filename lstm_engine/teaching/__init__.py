"""Tools for learning the cell: explain, inspect, plot."""
