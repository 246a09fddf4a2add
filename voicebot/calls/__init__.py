"""The transport-neutral call lifecycle (DESIGN.md section 1): between the agent and the
transports. `manager` admits calls and holds what they share, `leg` is the seam every
transport implements and the one `run_leg` lifecycle, `pacing` clocks bursty input to
20 ms, `metrics` turns call events into Prometheus figures, `service` is what a transport
server (the SIP gateway) looks like to the app that runs it."""
