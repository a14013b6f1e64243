"""PNG figures of run outputs (matplotlib, Agg backend), written atomically."""
