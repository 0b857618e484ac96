// plugin_device.go: handing device arenas to a plugin process. A plugin
// takes them only if its Describe reports protocol minor >= 2 and the
// capability "device_arenas" (asked once per process, telling it the
// host's device); an older plugin is never sent one (it would wait for an
// fd on the side socket), and the caller keeps that plugin on host-memory
// arenas (TakesDeviceArenas says which).
//
// Synchronisation contract (protocol comment of ARENA_KIND_CUDA_IPC): the
// caller synchronises its device stream before a call that grants device
// tensors (SyncForPlugin), and reads what the plugin wrote only after the
// reply, by which time the plugin's SDK synchronised its own stream.
package host

import (
	"context"
	"fmt"
	"slices"

	"github.com/sdbridge/sdbridge/plugins/sdk"
)

// SetDevice tells the plugin the host's compute device ("cpu", "cuda:0")
// in the Describe that decides whether it takes device arenas. Set it
// before the first call.
func (p *Plugin) SetDevice(device string) {
	p.mu.Lock()
	p.device = device
	p.mu.Unlock()
}

// TakesDeviceArenas starts the plugin if needed and reports whether it
// accepts device arenas.
func (p *Plugin) TakesDeviceArenas(ctx context.Context) (bool, error) {
	inc, err := p.running()
	if err != nil {
		return false, err
	}
	inc.mapMu.Lock()
	defer inc.mapMu.Unlock()
	return p.describeDevice(ctx, inc)
}

// describeDevice asks the process once whether it takes device arenas
// (inc.mapMu held).
func (p *Plugin) describeDevice(ctx context.Context, inc *incarnation) (bool, error) {
	if inc.described {
		return inc.devArenas, inc.descErr
	}
	p.mu.Lock()
	device := p.device
	p.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	d, err := inc.remote.DescribeFor(cctx, &sdk.DescribeRequest{Device: device})
	if err != nil {
		return false, err // not cached: a transient failure is retried
	}
	inc.described = true
	inc.devArenas = d.APIMinor >= 2 && slices.Contains(d.Capabilities, sdk.CapDeviceArenas)
	if !inc.devArenas {
		inc.descErr = fmt.Errorf("plugin %q (api minor %d, capabilities %v) does not take device arenas; run it with --device cpu or update it", p.spec.Name, d.APIMinor, d.Capabilities)
	}
	return inc.devArenas, nil
}

// mapDeviceArena sends device arena a to the process (inc.mapMu held).
func (p *Plugin) mapDeviceArena(ctx context.Context, inc *incarnation, a *Arena) error {
	ok, err := p.describeDevice(ctx, inc)
	if err != nil {
		return fmt.Errorf("device arena %d (%s): %w", a.ID, a.Name, err)
	}
	if !ok {
		return fmt.Errorf("device arena %d (%s): %w", a.ID, a.Name, inc.descErr)
	}
	if err := inc.remote.MapDeviceArena(ctx, a.ID, uint64(a.dev.size), a.PluginWritable, a.dev.handle, a.dev.dev.Ordinal); err != nil {
		return fmt.Errorf("mapping device arena %d (%s): %w", a.ID, a.Name, err)
	}
	return nil
}

// SyncForPlugin waits for the device streams of every device arena among
// refs, so a plugin reading them sees the host's queued writes and the
// host queued no work on them behind the plugin's back.
func SyncForPlugin(refs []sdk.TensorRef) error {
	done := map[any]bool{}
	for _, r := range refs {
		a, ok := lookupArena(r.Arena)
		if !ok || !a.OnDevice() {
			continue
		}
		d := a.Device()
		if done[d] {
			continue
		}
		done[d] = true
		if err := d.Synchronize(); err != nil {
			return fmt.Errorf("synchronising %s before a plugin call on %q: %w", d, r.Name, err)
		}
	}
	return nil
}
