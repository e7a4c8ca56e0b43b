"""I/O: gang admission of a new revision's pods. The webhook gates them; this admits a whole
group at once, or fails it at its deadline."""
