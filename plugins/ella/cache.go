// cache.go is the per-prompt cache: the T5 features of a prompt and their
// timestep-independent connector part (proj_in + LayerNorm), kept in a small
// LRU keyed by (configuration, length mode, prompt text), so a prompt that
// comes back (the same negative prompt for every image, a DPG-Bench run with
// several samples per prompt) is encoded by T5 only once.
//
// It does not hand out handles (plugin.go does; a handle keeps its entry
// alive after eviction) and it does not run the per-step connector.
package ella

import (
	"container/list"
	"sync"

	"github.com/sdbridge/sdbridge/models"
	"github.com/sdbridge/sdbridge/nn"
)

// DefaultCacheSize is how many prompts the LRU keeps (a generation uses
// two: prompt and negative).
const DefaultCacheSize = 8

// promptKey identifies an encoded prompt.
type promptKey struct {
	config Config
	mode   string
	text   string
}

// encoded is one prompt through T5 and the connector's text projection.
type encoded struct {
	features *nn.Tensor       // [1, N, Din] T5 last_hidden_state
	text     *models.ELLAText // [1, N, W] LN(proj_in(features))
	tokens   int              // N
}

// lru is a fixed-size least-recently-used map of encoded prompts.
type lru struct {
	mu    sync.Mutex
	size  int
	order *list.List // front = most recent; values are *lruEntry
	byKey map[promptKey]*list.Element
	hits  int
	miss  int
}

type lruEntry struct {
	key promptKey
	val *encoded
}

func newLRU(size int) *lru {
	return &lru{size: max(size, 1), order: list.New(), byKey: map[promptKey]*list.Element{}}
}

// get returns the entry of k and marks it recent.
func (c *lru) get(k promptKey) (*encoded, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[k]
	if !ok {
		c.miss++
		return nil, false
	}
	c.hits++
	c.order.MoveToFront(el)
	return el.Value.(*lruEntry).val, true
}

// put stores v under k, evicting the least recent entry when full.
func (c *lru) put(k promptKey, v *encoded) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[k]; ok {
		el.Value.(*lruEntry).val = v
		c.order.MoveToFront(el)
		return
	}
	c.byKey[k] = c.order.PushFront(&lruEntry{key: k, val: v})
	for c.order.Len() > c.size {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byKey, last.Value.(*lruEntry).key)
	}
}

// stats returns hits, misses and the number of entries.
func (c *lru) stats() (hits, miss, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.miss, c.order.Len()
}
