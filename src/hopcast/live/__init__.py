"""Live events: the schedule, timed triggers, prefetch payloads and the broadcast gateway."""
