"""The client side of the fleet: the agent inside an app, its recorder, on-disk spool and
uploader, and the out-of-process watchdog."""
