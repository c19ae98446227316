package matrixside

import (
	"container/list"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// connCap bounds the open connections of the appservice listener. When it
// is full, a new connection makes room by closing the oldest one that has
// no request in progress (a peer that connected and sent nothing, or an
// idle keep-alive): a flood of idle connections cannot keep the
// homeserver out, as it would behind a listener that only stops accepting
// (netutil.LimitListener), where the homeserver would queue behind the
// flood until the header timeout freed slots. Only when every connection
// is busy with a request does Accept wait for one to end.
//
// The server's ConnState hook (track) tells it which connections are busy.
type connCap struct {
	net.Listener
	max  int
	shed *atomic.Uint64 // Counts.ConnectionsShed

	mu     sync.Mutex
	open   int
	idle   list.List     // of *capConn without a request in progress, oldest first
	freed  chan struct{} // closed and replaced when a connection closes
	closed chan struct{} // closed by Close
	once   sync.Once
}

func newConnCap(ln net.Listener, max int, shed *atomic.Uint64) *connCap {
	return &connCap{Listener: ln, max: max, shed: shed, freed: make(chan struct{}), closed: make(chan struct{})}
}

// capConn is a connection counted by its connCap.
type capConn struct {
	net.Conn
	c      *connCap
	idleEl *list.Element // in c.idle while no request is in progress
	gone   bool          // closed (c.mu)
	once   sync.Once
}

func (cc *capConn) Close() error {
	err := cc.Conn.Close()
	cc.once.Do(func() {
		c := cc.c
		c.mu.Lock()
		if cc.idleEl != nil {
			c.idle.Remove(cc.idleEl)
			cc.idleEl = nil
		}
		cc.gone = true
		c.open--
		close(c.freed)
		c.freed = make(chan struct{})
		c.mu.Unlock()
	})
	return err
}

// Accept returns the next connection once there is room for it.
func (c *connCap) Accept() (net.Conn, error) {
	conn, err := c.Listener.Accept()
	if err != nil {
		return nil, err
	}
	for {
		c.mu.Lock()
		if c.open < c.max {
			c.open++
			cc := &capConn{Conn: conn, c: c}
			cc.idleEl = c.idle.PushBack(cc)
			c.mu.Unlock()
			return cc, nil
		}
		var victim *capConn
		if e := c.idle.Front(); e != nil {
			victim = e.Value.(*capConn)
		}
		freed := c.freed
		c.mu.Unlock()
		if victim != nil {
			c.shed.Add(1)
			_ = victim.Close() // frees its slot at once
			continue
		}
		select {
		case <-freed:
		case <-c.closed:
			_ = conn.Close()
			return nil, net.ErrClosed
		}
	}
}

// Close closes the listener; an Accept waiting for room returns.
func (c *connCap) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Listener.Close()
}

// track is the http.Server's ConnState hook: a connection reading or
// serving a request is busy; a new or idle one may be shed.
func (c *connCap) track(conn net.Conn, st http.ConnState) {
	cc, ok := conn.(*capConn)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch st {
	case http.StateActive, http.StateHijacked, http.StateClosed:
		if cc.idleEl != nil {
			c.idle.Remove(cc.idleEl)
			cc.idleEl = nil
		}
	case http.StateIdle:
		if cc.idleEl == nil && !cc.gone {
			cc.idleEl = c.idle.PushBack(cc)
		}
	}
}

// openConns returns how many connections are open.
func (c *connCap) openConns() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open
}
