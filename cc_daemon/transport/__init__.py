"""The HTTP/1.1 listener: one request handler for TCP and Unix sockets.

Owns, module by module:

    addresses   listen / connect addresses (standard library only: the client imports it)
    framing     request headers and bodies, response heads, ``HttpError``
    policy      ``Route`` and its policy; auth outcomes, API version and CORS in HTTP terms
    endpoints   the route table and what each path answers
    handler     one connection and its requests: parse, route, apply the policy, answer
    sse         SSE frames and the writer that sends them
    live_tail   an event stream to its end, and the shared thread of caught-up streams
    kernel      kernel socket timeouts, and the signal mask of this package's threads
    guards      request deadlines, in-flight requests, connections over the cap
    servers     the TCP and Unix servers, ``Services`` and ``Limits``, socket paths

Must not: hold any service state of its own. It calls into the services it is given
(``servers.Services``): the authenticator, the client registry, the JSON-RPC dispatcher
and the event bus. Services never import this package. This file stays free of imports,
so that importing ``addresses`` does not load the server.
"""
