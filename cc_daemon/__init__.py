"""cc_daemon: the local control plane that lets many frontends drive AI coding-agent sessions.

The package is layered so that dependencies point one way:

    commands (CLI verbs)  ->  client            (talks to a daemon over the wire)
    daemon (composition)  ->  transport -> rpc -> methods -> services
    services: events, auth, identity, permissions, sessions, runtimes, supervisor, storage

Services never import the HTTP layer; methods adapt services to JSON-RPC.
"""

__version__ = "0.1.0"

#: The wire contract version (``Cheetahclaws-Api-Version``) this daemon speaks.
API_VERSION = "0"
API_VERSION_HEADER = "Cheetahclaws-Api-Version"
