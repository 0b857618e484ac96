// events.go: CUDA events on the device's stream, for GPU-side timing
// (cuEventElapsedTime between two recorded events, resolution about half a
// microsecond) and for waiting on a point of the stream without draining
// all of it (the pinned staging ring uses one per slot). Recording an
// event inside Capture is allowed; waiting on one is not. It does not bind
// IPC events (cuIpcGetEventHandle) or cross-stream waits (one stream per
// device).
package cuda

import (
	"errors"
	"fmt"
	"time"
)

// Event flags (CUevent_flags, cuda.h).
const (
	eventDefault       = 0
	eventDisableTiming = 2
)

// Event is a CUDA event created on a device.
type Event struct {
	dev    *Device
	h      uintptr // CUevent
	timing bool
}

var eventSyms = []string{"cuEventCreate", "cuEventRecord", "cuEventSynchronize", "cuEventDestroy_v2"}

// NewEvent creates an event. timing false makes a lighter event that
// Elapsed refuses (for synchronisation only).
func (d *Device) NewEvent(timing bool) (*Event, error) {
	if err := need(d.api, eventSyms...); err != nil {
		return nil, err
	}
	flags := uint32(eventDefault)
	if !timing {
		flags = eventDisableTiming
	}
	e := &Event{dev: d, timing: timing}
	err := d.Do(func() error { return check("cuEventCreate", d.api.cuEventCreate(&e.h, flags)) })
	if err != nil {
		return nil, err
	}
	return e, nil
}

// Record queues the event on the device's stream: it completes when all
// work queued before it has.
func (e *Event) Record() error {
	if e == nil || e.h == 0 {
		return errors.New("cuda: Record of a closed event")
	}
	d := e.dev
	return d.Do(func() error { return check("cuEventRecord", d.api.cuEventRecord(e.h, d.stream)) })
}

// Synchronize waits until the event's last Record has completed (at once
// if it was never recorded).
func (e *Event) Synchronize() error {
	if e == nil || e.h == 0 {
		return errors.New("cuda: Synchronize of a closed event")
	}
	d := e.dev
	if err := d.notCapturing("Event.Synchronize"); err != nil {
		return err
	}
	return d.Do(func() error { return check("cuEventSynchronize", d.api.cuEventSynchronize(e.h)) })
}

// Close destroys the event. Closing twice is a no-op.
func (e *Event) Close() error {
	if e == nil || e.h == 0 {
		return nil
	}
	d, h := e.dev, e.h
	e.h = 0
	return d.Do(func() error { return check("cuEventDestroy", d.api.cuEventDestroy(h)) })
}

// Elapsed waits for end and returns the GPU time between the completion of
// start and of end, both recorded on the same device (CUDA 13 exports
// cuEventElapsedTime_v2, older drivers cuEventElapsedTime).
func Elapsed(start, end *Event) (time.Duration, error) {
	if start == nil || end == nil || start.h == 0 || end.h == 0 {
		return 0, errors.New("cuda: Elapsed of a closed event")
	}
	if start.dev != end.dev {
		return 0, errors.New("cuda: Elapsed between events of two devices")
	}
	if !start.timing || !end.timing {
		return 0, errors.New("cuda: Elapsed of an event created without timing")
	}
	d := start.dev
	elapsed, name := d.api.cuEventElapsedTimeV2, "cuEventElapsedTime_v2"
	if elapsed == nil {
		if err := need(d.api, "cuEventElapsedTime"); err != nil {
			return 0, err
		}
		elapsed, name = d.api.cuEventElapsedTime, "cuEventElapsedTime"
	}
	if err := end.Synchronize(); err != nil {
		return 0, err
	}
	var ms float32
	err := d.Do(func() error { return check(name, elapsed(&ms, start.h, end.h)) })
	if err != nil {
		return 0, err
	}
	return time.Duration(float64(ms) * float64(time.Millisecond)), nil
}

// Time runs fn (which queues work on d's stream), and returns the GPU time
// that work took, measured between events recorded before and after it.
func (d *Device) Time(fn func() error) (time.Duration, error) {
	start, err := d.NewEvent(true)
	if err != nil {
		return 0, err
	}
	defer start.Close()
	end, err := d.NewEvent(true)
	if err != nil {
		return 0, err
	}
	defer end.Close()
	if err := start.Record(); err != nil {
		return 0, err
	}
	if err := fn(); err != nil {
		return 0, fmt.Errorf("cuda: timed work: %w", err)
	}
	if err := end.Record(); err != nil {
		return 0, err
	}
	return Elapsed(start, end)
}
