"""The router's own policy numbers: bounds and intervals no other part of squall needs.

Kept here, together, rather than in ``squall.config``: none is a flag or shared with the client
or the worker, yet each is a choice someone may want to revisit, and a choice is easier to
weigh next to its neighbours than buried in the code that applies it. Values shared with other
processes stay in ``squall.config`` (or ``squall.protocol`` for a wire fact) and are only
renamed here.
"""

from __future__ import annotations

from squall.config import CLIENT_LIVENESS_WINDOWS

# -- tasks and workers ---------------------------------------------------------------------

#: a task whose worker died this often runs alone on a worker from then on, so that a task
#: that kills its worker is told apart from the tasks that merely shared the process with it
ISOLATE_AFTER = 2
#: dead workers whose charged tasks are remembered until their node names the culprits
MAX_CHARGED = 64
#: refused function bodies remembered, so that their tasks fail with the reason
MAX_REFUSED_BODIES = 1024

#: seconds a restarted router waits for workers to report the background tasks that were
#: running when it stopped, before it runs them again (a worker reconnects within a few
#: heartbeats and sends the results it finished meanwhile)
RECOVERY_GRACE = 10.0

# -- liveness ------------------------------------------------------------------------------

#: a client is declared gone after this many liveness windows of silence (config's number)
CLIENT_LIVENESS = CLIENT_LIVENESS_WINDOWS

# -- misbehaving peers ---------------------------------------------------------------------

#: malformed messages one peer may send before it is cut off
GARBAGE_LIMIT = 1000
#: routing ids remembered with the key that first used them (and peers told to say HELLO)
MAX_OWNERS = 65_536
#: peers remembered as cut off (their messages dropped unread)
MAX_IGNORED = 65_536
#: seconds between two "you are cut off" replies to the same peer
CUT_OFF_REMINDER = 5.0
#: seconds between two "say HELLO again" replies to the same peer: a burst of stale messages
#: gets one, so the peer registers once, not once per message
UNKNOWN_PEER_REMINDER = 1.0
#: seconds between two log lines about messages dropped for coming under another key's id
IMPOSTOR_LOG_INTERVAL = 1.0

# -- messages ------------------------------------------------------------------------------

#: seconds a STARTED waits before it goes to the client (the server's default; a bare
#: RouterState announces at once): a task that finishes sooner is never announced, its RESULT
#: says it all, which spares one message and one client wake-up per short task
STARTED_DELAY = 0.02
