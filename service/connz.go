package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// This file asks the NATS servers which connections are open: the paged
// connection lists that the liveness sweep compares lock owners with, and
// the check that the system connection really is in the system account.

// Subjects of the NATS server's system API.
const (
	// serverConnz asks every server for all its connections (system account).
	serverConnz = "$SYS.REQ.SERVER.PING.CONNZ"
	// accountConnz asks every server for the connections of the requester's
	// own account; any account may send it while a system account exists.
	accountConnz = "$SYS.REQ.ACCOUNT.PING.CONNZ"
)

// checkSystemAccount makes sure sys is in the system account. In an
// application account it could subscribe to the advisories and send
// serverConnz without error, but it would receive no advisories, and the
// server would list that account's connections only: the sweep would
// release the locks of every live connection of the other accounts.
//
// The check uses serverConnz only, the one request the system user needs
// permission for: asked through sys, the server must list the service's
// own connection nc, in another account than sys.
func checkSystemAccount(nc, sys *nats.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), connzFirstAnswer)
	defer cancel()
	sysAcc, found, err := connzAccount(ctx, sys, sys)
	if err == nil && !found {
		err = errors.New("the server does not list the system connection itself")
	}
	var appAcc string
	if err == nil {
		appAcc, found, err = connzAccount(ctx, sys, nc)
	}
	if err != nil {
		return fmt.Errorf("service: checking that the system connection is in the system account (%s): %w", serverConnz, err)
	}
	if !found || appAcc == sysAcc {
		if sysAcc == "" {
			sysAcc = "$G" // the listing leaves the global account's name out
		}
		return fmt.Errorf("service: the system connection is in account %q, not in the NATS system account: "+
			"it would see only that account's connections and release the locks of live clients of other accounts; "+
			"give it the credentials of a user of the system account (LDLM_SYSTEM_* settings of ldlm)", sysAcc)
	}
	return nil
}

// connzAccount asks, through sys, for the connection conn and returns its
// account ("" for the global account, $G), or found false when the listing
// does not show it.
func connzAccount(ctx context.Context, sys, conn *nats.Conn) (account string, found bool, err error) {
	cid, err := conn.GetClientID()
	if err != nil {
		return "", false, err
	}
	server := conn.ConnectedServerId()
	inbox := sys.NewRespInbox()
	sub, err := sys.SubscribeSync(inbox)
	if err != nil {
		return "", false, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sys.PublishRequest(serverConnz, inbox, fmt.Appendf(nil, `{"cid":%d,"auth":true}`, cid)); err != nil {
		return "", false, err
	}
	// Every server answers, each about its own connection of that id: wait
	// for the one conn is on.
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return "", false, fmt.Errorf("no answer from server %s: %w", server, err)
		}
		var r connzReply
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			return "", false, fmt.Errorf("unreadable answer: %w", err)
		}
		if r.Server.ID != server || r.Error != nil {
			continue
		}
		for _, c := range r.Data.Conns {
			if c.CID == cid {
				return c.Account, true, nil
			}
		}
		return "", false, nil
	}
}

const (
	connzPageSize = 4096
	// connzPageOverlap is how many connections each page repeats of the
	// one before. The servers list connections by client id and page by
	// position, so connections that close between two pages shift later
	// ones onto the page already read; the overlap absorbs that many
	// closes, and a larger shift is detected (see connList.add).
	connzPageOverlap = 256
	// connzQuiet is how long the sweep waits after the last server's answer
	// for another server to answer: there is no way to know how many will.
	connzQuiet        = 250 * time.Millisecond
	connzFirstAnswer  = 3 * time.Second
	sweepTimeout      = 30 * time.Second
	missingSweepLimit = 2 // a server unanswering this many sweeps in a row is gone
)

type connzReply struct {
	Server struct {
		Name string `json:"name"`
		ID   string `json:"id"`
	} `json:"server"`
	Data struct {
		Total  int         `json:"total"`
		Offset int         `json:"offset"`
		Conns  []connzConn `json:"connections"`
	} `json:"data"`
	Error *struct {
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

type connzConn struct {
	CID     uint64 `json:"cid"`
	Account string `json:"account"` // only when asked with "auth"; "" for $G
}

// connList collects the servers' connection lists, page by page. Servers
// are keyed by id: a restarted server has a new one.
type connList struct {
	live    map[string]map[uint64]struct{} // server id → open client ids
	names   map[string]string              // server id → server name
	highest map[string]uint64              // server id → highest client id listed
	done    map[string]bool                // the server's list is complete, or given up
	// gaps names the servers whose list may lack open connections: their
	// pages shifted by more than the overlap while they were read. Their
	// owners must not be judged by this sweep.
	gaps map[string]bool
}

func newConnList() *connList {
	return &connList{live: map[string]map[uint64]struct{}{}, names: map[string]string{}, highest: map[string]uint64{},
		done: map[string]bool{}, gaps: map[string]bool{}}
}

// add records one server's page, asked for at offset, and reports whether
// that server has more pages. A page after the first must begin at or
// below the highest client id listed so far, the last of the page before
// (the pages overlap): if it begins above it, connections that closed
// meanwhile shifted some open ones past this page's start, and they are
// missing from the list.
func (c *connList) add(r connzReply, offset int) (more bool) {
	id := r.Server.ID
	c.names[id] = r.Server.Name
	set := c.live[id]
	if set == nil {
		set = map[uint64]struct{}{}
		c.live[id] = set
	}
	if c.done[id] {
		return false // a page past the end of a list already complete
	}
	conns := r.Data.Conns
	if offset > 0 && (len(conns) == 0 || conns[0].CID > c.highest[id]) {
		c.gaps[id], c.done[id] = true, true
		return false
	}
	for i, conn := range conns {
		if i > 0 && conn.CID <= conns[i-1].CID {
			// Not in client id order: the overlap proves nothing.
			c.gaps[id] = true
		}
		set[conn.CID] = struct{}{}
		c.highest[id] = max(c.highest[id], conn.CID)
	}
	if r.Data.Offset+len(conns) >= r.Data.Total || c.gaps[id] {
		c.done[id] = true
		return false
	}
	return true
}

// listConnections asks every NATS server for its open connections, page by
// page, through conn: subject is serverConnz for a system connection (all
// accounts), accountConnz otherwise (conn's account only). quiet is how
// long to wait after an answer for another server's (see gather).
func listConnections(ctx context.Context, conn *nats.Conn, subject string, quiet time.Duration) (*connList, error) {
	list := newConnList()
	for offset := 0; ; offset += connzPageSize - connzPageOverlap {
		body := fmt.Appendf(nil, `{"offset":%d,"limit":%d}`, offset, connzPageSize)
		msgs, err := gather(ctx, conn, subject, body, connzFirstAnswer, quiet)
		if err != nil {
			return nil, err
		}
		if len(msgs) == 0 {
			return nil, errors.New(subject + ": no NATS server answered (is there a system account?)")
		}
		more := false
		for _, msg := range msgs {
			var r connzReply
			if err := json.Unmarshal(msg.Data, &r); err != nil {
				return nil, fmt.Errorf("%s: unreadable answer: %w", subject, err)
			}
			if r.Error != nil {
				return nil, fmt.Errorf("%s: server %q answered %d %s", subject, r.Server.Name, r.Error.Code, r.Error.Description)
			}
			if list.add(r, offset) {
				more = true
			}
		}
		if !more {
			return list, nil
		}
	}
}

// gather sends one request and collects answers until none came for
// quiet, or none at all within first. A quiet of 0 takes the first answer
// alone: for a NATS server known to be the only one.
func gather(ctx context.Context, nc *nats.Conn, subject string, body []byte, first, quiet time.Duration) ([]*nats.Msg, error) {
	inbox := nc.NewRespInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, body); err != nil {
		return nil, err
	}
	var replies []*nats.Msg
	wait := time.NewTimer(first)
	defer wait.Stop()
	for {
		select {
		case msg := <-ch:
			replies = append(replies, msg)
			if quiet == 0 {
				return replies, nil
			}
			wait.Reset(quiet)
		case <-wait.C:
			return replies, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
