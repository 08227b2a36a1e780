def test_ping_both_transports(daemon):
    assert daemon.rpc("system.ping") == {"jsonrpc": "2.0", "result": "pong", "id": 1}
