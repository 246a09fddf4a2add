"""SIP signalling, RTP, DTMF and call control: the telephony transport (G.711 <-> frames)."""
