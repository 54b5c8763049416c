"""The core: one turn as a stream of events, whatever the model and whatever the transport."""
