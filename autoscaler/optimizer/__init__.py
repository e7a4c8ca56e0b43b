"""Pure: the Inferno-parity optimizer. A System (GPU types, capacity, profiles, service classes,
servers) in, the cheapest placement under the capacity out; no I/O, no clock."""
