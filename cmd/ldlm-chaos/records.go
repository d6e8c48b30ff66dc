package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"
)

// A worker appends one JSON line per event to its own file, as it goes,
// so that a kill -9 loses at most the section it was in (the orchestrator,
// which knows when it killed the process, closes that one).
type record struct {
	Kind  string `json:"k"`               // recEnter, recLeave, recUnlock, recError
	Seq   int    `json:"s,omitempty"`     // section number, per worker
	Lock  string `json:"lock,omitempty"`  // enter
	Size  int    `json:"size,omitempty"`  // enter
	Token uint64 `json:"token,omitempty"` // enter
	Sent  int64  `json:"sent,omitempty"`  // enter: Unix ns when the Lock call started
	At    int64  `json:"at"`              // Unix ns of the event
	Why   string `json:"why,omitempty"`   // leave: leaveUnlock, leaveLost or leaveStop
	Err   string `json:"err,omitempty"`   // leave (why lost), unlock, error
}

const (
	recEnter  = "enter"  // the grant reply arrived; the section starts
	recLeave  = "leave"  // the worker no longer treats itself as holder
	recUnlock = "unlock" // the Unlock after a leave returned (Err if it failed)
	recError  = "error"  // a Lock call failed
)

// recordWriter appends records to a file. Each record is one write(2), so
// it reaches the kernel before the worker goes on, and survives kill -9.
type recordWriter struct {
	mu sync.Mutex
	f  *os.File
}

func (w *recordWriter) write(r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err = w.f.Write(append(b, '\n'))
	return err
}

// workerLog is what one worker's file says.
type workerLog struct {
	Intervals []Interval
	Open      []Interval     // entered, never left (the process died in the section)
	Lost      map[string]int // sections ended by Lock.Done, by cause
	Unlocks   int            // unlocks that succeeded
	UnlockErr map[string]int // failed unlocks by error
	Errors    map[string]int // failed Lock calls by error
	Problems  []string       // records that make no sense (leave without enter, …)
}

// readWorkerLog reads a worker's file. A last line cut short by a kill is
// ignored.
func readWorkerLog(path string, worker int) (workerLog, error) {
	log := workerLog{Lost: map[string]int{}, UnlockErr: map[string]int{}, Errors: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		return log, err
	}
	defer f.Close()
	open := map[int]Interval{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue // a line cut short by kill -9 (only the last one can be)
		}
		at := time.Unix(0, r.At)
		switch r.Kind {
		case recEnter:
			if _, dup := open[r.Seq]; dup {
				log.Problems = append(log.Problems, fmt.Sprintf("line %d: section %d entered twice", line, r.Seq))
			}
			iv := Interval{Worker: worker, Seq: r.Seq, Lock: r.Lock, Size: r.Size, Token: r.Token,
				Sent: time.Unix(0, r.Sent), Enter: at}
			if r.Token == 0 || r.Size < 1 || r.Lock == "" {
				log.Problems = append(log.Problems, fmt.Sprintf("line %d: section %d entered without a grant (token %d, size %d, lock %q)", line, r.Seq, r.Token, r.Size, r.Lock))
			}
			if iv.Enter.Before(iv.Sent) {
				log.Problems = append(log.Problems, fmt.Sprintf("line %d: section %d entered before its Lock call started", line, r.Seq))
			}
			open[r.Seq] = iv
		case recLeave:
			iv, ok := open[r.Seq]
			if !ok {
				log.Problems = append(log.Problems, fmt.Sprintf("line %d: section %d left but never entered", line, r.Seq))
				continue
			}
			delete(open, r.Seq)
			iv.Leave, iv.Why, iv.Cause = at, r.Why, r.Err
			if iv.Leave.Before(iv.Enter) {
				log.Problems = append(log.Problems, fmt.Sprintf("line %d: section %d left before it was entered", line, r.Seq))
			}
			log.Intervals = append(log.Intervals, iv)
			if r.Why == leaveLost {
				log.Lost[r.Err]++
			}
		case recUnlock:
			if r.Err == "" {
				log.Unlocks++
			} else {
				log.UnlockErr[r.Err]++
			}
		case recError:
			log.Errors[r.Err]++
		}
	}
	if err := sc.Err(); err != nil {
		return log, fmt.Errorf("reading %s: %w", path, err)
	}
	for _, iv := range open {
		log.Open = append(log.Open, iv)
	}
	sort.Slice(log.Open, func(a, b int) bool { return log.Open[a].Seq < log.Open[b].Seq })
	return log, nil
}
