"""The two designs Hubbub is measured against: the Channels tutorial's and raw websockets + PUBLISH."""
